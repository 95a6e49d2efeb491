"""Every dialect's routes, registered on the app: what gathers the dialects sits above them (as the
OpenAPI document does), so that `common/` and each dialect import nothing of the others."""

from __future__ import annotations

from flask import Flask

from server import ui
from server.api import openapi
from server.api.kaito import routes as kaito
from server.api.mosaic import handler_predict
from server.api.mosaic import routes as mosaic
from server.api.openai import admin, embeddings, responses, tokenize
from server.api.openai import routes as openai
from server.api.tgi import routes as tgi


def register(app: Flask, model_kind: str) -> None:
    app.register_blueprint(kaito.bp)
    # MosaicML's /predict is text generation on the chat engine, the handler's predict otherwise
    predict = mosaic.bp if model_kind == "chat" else handler_predict.bp
    # embeddings: /v1/embeddings rides on the OpenAI blueprint; /embed is TEI's own
    for bp in (openai.bp, admin.bp, responses.bp, tokenize.bp, tgi.bp, predict, openapi.bp, ui.bp,
               embeddings.tei_bp):
        app.register_blueprint(bp)
