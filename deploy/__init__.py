"""Running the project for a team: the tracking stack (stack.py)."""
