"""The extension objects and the demo users, shared by the factory, the views and the demos."""

from __future__ import annotations

from typing import Optional

from flask_login import LoginManager, UserMixin

from flask_sse_ext import SSE

#: Browsers reconnect one second after a stream drops (the extension's default is three).
sse = SSE(retry=1000)

login_manager = LoginManager()
login_manager.login_view = "demo.login"

#: DEMO ONLY: anyone may sign in as any of these users, with no password.
DEMO_USERS = {"alice": "Alice", "bob": "Bob", "carol": "Carol"}


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id
        self.name = DEMO_USERS[user_id]


@login_manager.user_loader
def load_user(user_id: str) -> Optional[User]:
    return User(user_id) if user_id in DEMO_USERS else None
