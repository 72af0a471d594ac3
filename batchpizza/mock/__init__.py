"""The local stand-in for the APIs batchpizza speaks, for offline demos and the tests: server.py
runs it, pizzagpt.py and openai.py are its routes, replies.py words what they send, faults.py
decides what goes wrong and stats.py counts what was served."""
