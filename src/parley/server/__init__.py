"""The line server: routes sealed envelopes, keeps the directory. Trusted with no secrets."""
