"""The capture role: the user's CLI toward an api (or the embedded one of local mode)."""
