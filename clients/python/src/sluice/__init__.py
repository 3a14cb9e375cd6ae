"""Python client of Sluice, a WebSocket gateway that runs code and streams its events.

>>> async with SandboxClient("ws://127.0.0.1:7878/v1/ws") as client:
...     async for event in client.execute_code_stream("print('hi')"):
...         print(event.type, event.data)
"""

from ._connection import ReconnectPolicy
from .client import DEFAULT_URL, FileList, SandboxClient
from .errors import (
    AttachRefused,
    AuthenticationError,
    ClientClosed,
    ExecutionCancelled,
    ExecutionError,
    ExecutionFailed,
    FileRefused,
    FrameError,
    LimitExceeded,
    NonZeroExit,
    ProtocolError,
    QueryRefused,
    RestartRefused,
    RuntimesRefused,
    SluiceConnectionError,
    SluiceError,
)
from .events import (
    DISPLAY_TYPES,
    KNOWN_ERROR_CODES,
    TERMINAL_TYPES,
    CellException,
    FileChanges,
    FileEntry,
    StreamEvent,
    Usage,
    decode_event,
)
from .execution import Execution, ExecutionResult, ExecutionStream
from .frames import ExecuteOptions, Limits, decode_frame, validate_frame
from .queries import Completions, Inspection
from .runtimes import Catalog, LimitRange, PackageInfo, RuntimeInfo
from .session import SessionStream

__all__ = [
    "DEFAULT_URL",
    "DISPLAY_TYPES",
    "KNOWN_ERROR_CODES",
    "TERMINAL_TYPES",
    "AttachRefused",
    "AuthenticationError",
    "Catalog",
    "CellException",
    "ClientClosed",
    "Completions",
    "ExecuteOptions",
    "Execution",
    "ExecutionCancelled",
    "ExecutionError",
    "ExecutionFailed",
    "ExecutionResult",
    "ExecutionStream",
    "FileChanges",
    "FileEntry",
    "FileList",
    "FileRefused",
    "FrameError",
    "Inspection",
    "LimitExceeded",
    "LimitRange",
    "Limits",
    "NonZeroExit",
    "PackageInfo",
    "ProtocolError",
    "QueryRefused",
    "ReconnectPolicy",
    "RestartRefused",
    "RuntimeInfo",
    "RuntimesRefused",
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
