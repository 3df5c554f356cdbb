"""A site's terminal: holds the device keys, the pins and the calls; serves the local UI."""
