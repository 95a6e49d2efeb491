"""`make bench`: the real server against bare `model.generate` on the same machine, in one run."""
