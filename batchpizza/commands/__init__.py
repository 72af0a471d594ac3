"""The commands beside `run`, each a small click command that cli.py registers on its group:
status.py (`status`, `report`) and mock_server.py (`mock-server`)."""
