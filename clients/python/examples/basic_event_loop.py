"""Seed example "Basic Event Loop": handle every event of one execution.

Run with a gateway: SLUICE_URL=ws://127.0.0.1:7878/v1/ws python basic_event_loop.py
"""

import asyncio
import sys

from sluice import SandboxClient


async def handle_execution(code: str):
    client = SandboxClient()
    await client.setup()

    try:
        async for event in client.execute_code_stream(code):
            match event.type:
                case 'stdout':
                    print(f"Output: {event.data}")
                case 'stderr':
                    print(f"Error: {event.data}")
                case 'error':
                    print(f"Execution error: {event.data}")
                case 'completed':
                    print("Execution completed")
    finally:
        await client.cleanup()


if __name__ == "__main__":
    code = sys.argv[1] if len(sys.argv) > 1 else "print('hello from sluice')"
    asyncio.run(handle_execution(code))
