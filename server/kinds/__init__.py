"""Model kinds other than chat generation, served through one seam: a MosaicML-style model handler.

A handler is any class built once with keyword parameters whose `predict(model_requests)` answers a
batch (and, optionally, `predict_stream(**request)` yields text). The built-in embedding kind
(`server/kinds/embedding.py`) is such a handler; a user's class plugs in the same way.
"""
