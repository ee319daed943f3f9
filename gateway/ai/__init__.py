"""The AI responder: knowledge-base and model answers, handoff, and its event-log consumer."""
