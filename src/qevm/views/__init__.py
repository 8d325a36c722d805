"""Views: meaning given to decoded device state (CPU registers, ...)."""
