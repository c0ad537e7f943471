"""Domain knowledge the security checks and actions share (issue 13): log scanning, bans,
API keys, certificates, images, log levels. Like the other domain modules, nothing here
imports a check, an action or the Celery wiring."""
