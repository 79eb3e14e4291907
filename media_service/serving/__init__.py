"""How the service meets the network: gunicorn worker, read deadlines and their settings."""
