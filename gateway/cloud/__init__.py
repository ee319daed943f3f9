"""The WhatsApp Cloud API path: Meta's signed webhook in, the Graph API out, into the same
tables, bus and outbox as WhatsApp Web sessions."""
