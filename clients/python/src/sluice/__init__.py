"""Python client of Sluice, a WebSocket gateway that runs code and streams its events.

>>> async with SandboxClient("ws://127.0.0.1:7878/v1/ws") as client:
...     async for event in client.execute_code_stream("print('hi')"):
...         print(event.type, event.data)
"""

from ._connection import ReconnectPolicy
from .client import DEFAULT_URL, SandboxClient
from .errors import (
    AttachRefused,
    AuthenticationError,
    ClientClosed,
    ExecutionCancelled,
    ExecutionError,
    ExecutionFailed,
    FrameError,
    LimitExceeded,
    NonZeroExit,
    ProtocolError,
    SluiceConnectionError,
    SluiceError,
)
from .events import TERMINAL_TYPES, StreamEvent, Usage, decode_event
from .execution import Execution, ExecutionResult, ExecutionStream
from .frames import ExecuteOptions, Limits, decode_frame, validate_frame
from .session import SessionStream

__all__ = [
    "DEFAULT_URL",
    "TERMINAL_TYPES",
    "AttachRefused",
    "AuthenticationError",
    "ClientClosed",
    "ExecuteOptions",
    "Execution",
    "ExecutionCancelled",
    "ExecutionError",
    "ExecutionFailed",
    "ExecutionResult",
    "ExecutionStream",
    "FrameError",
    "LimitExceeded",
    "Limits",
    "NonZeroExit",
    "ProtocolError",
    "ReconnectPolicy",
    "SandboxClient",
    "SessionStream",
    "SluiceConnectionError",
    "SluiceError",
    "StreamEvent",
    "Usage",
    "decode_event",
    "decode_frame",
    "validate_frame",
]
