"""The agent's one error type, shared by its modules."""


class AgentError(Exception):
    """Something the user must fix; the message is one line that says what."""
