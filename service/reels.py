"""Placeholder: this API section's endpoints arrive with its issue."""

from flask_smorest import Blueprint

bp = Blueprint("reels", __name__)
