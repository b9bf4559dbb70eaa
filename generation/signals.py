"""Signals other apps subscribe to (monitoring turns them into alerts) without import cycles."""

from django.dispatch import Signal

# kwargs: model (str), state (BreakerState), reason (str)
breaker_changed = Signal()
