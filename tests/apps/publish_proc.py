"""A plain Python process (no Flask app, no gevent) that publishes with ``Publisher``.

Usage: python publish_proc.py REDIS_URL PREFIX CHANNEL COUNT; prints one JSON line of ids.
"""

import json
import sys

from flask_sse_ext import Publisher

url, prefix, channel, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
publisher = Publisher(url, prefix=prefix)
ids = [publisher.publish({"n": i}, event="tick", channel=channel) for i in range(count)]
publisher.close()
assert "gevent" not in sys.modules, "Publisher must not need gevent"
print(json.dumps(ids))
