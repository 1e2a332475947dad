"""Placeholder: this API section's endpoints arrive with its issue."""

from flask_smorest import Blueprint

bp = Blueprint("community_feed", __name__)
