"""Talking to models: the Request/Completion types, failure kinds, provider plans, the clients (OpenAI wire
format, Anthropic Messages, production-log replay), retries, and the model servers the harness starts."""
