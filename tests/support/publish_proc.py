"""A plain Python process (no Flask app, no gevent) that publishes with ``Publisher``.

Usage: ``PYTHONPATH=tests python -m support.publish_proc REDIS_URL PREFIX CHANNEL COUNT``;
prints one JSON line of ids. (Not as a script: its directory first on ``sys.path`` would make
``support/redis.py`` shadow the ``redis`` package.)
"""

import json
import sys

from flask_sse_ext import Publisher


def main(url: str, prefix: str, channel: str, count: int) -> None:
    publisher = Publisher(url, prefix=prefix)
    ids = [publisher.publish({"n": i}, event="tick", channel=channel) for i in range(count)]
    publisher.close()
    assert "gevent" not in sys.modules, "Publisher must not need gevent"
    print(json.dumps(ids))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
