"""Kaito compatibility: Kaito launches `accelerate launch ... inference_api.py --pipeline ...`."""

from server.__main__ import main

if __name__ == "__main__":
    main()
