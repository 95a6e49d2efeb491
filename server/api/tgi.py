from flask import Blueprint

bp = Blueprint("tgi", __name__)
