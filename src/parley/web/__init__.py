"""The person's web UI: static ES modules, HTML and CSS, served by the terminal (control.py)."""
