"""Security signals in near real time: sliding-window detectors over decisions that raise
security events (log, subscribers, webhook) and, when enabled, block the offender for a while.

``SecuritySignals`` is the DecisionObserver; its ``blocklist`` is the Guard the pipeline runs.
"""

from ext_authz.signals.blocklist import Block, Blocklist
from ext_authz.signals.events import KeyType, SecurityEvent, SignalKind
from ext_authz.signals.observer import EventCallback, SecuritySignals
from ext_authz.signals.webhook import WebhookSink

__all__ = [
    "Block",
    "Blocklist",
    "EventCallback",
    "KeyType",
    "SecurityEvent",
    "SecuritySignals",
    "SignalKind",
    "WebhookSink",
]
