from flask import Blueprint

bp = Blueprint("mosaic", __name__)
