from flask import Flask

from flask_sse_ext import SSE

app = Flask(__name__)
sse = SSE(app)  # or: sse = SSE(); sse.init_app(app) in an app factory


@app.post("/hello")
def hello():
    event_id = sse.publish({"message": "Hello!"}, event="greeting", channel="news")
    return {"id": event_id}
