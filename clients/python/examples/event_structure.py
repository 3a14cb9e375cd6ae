"""Seed examples "Event Structure" and "Event Types": print every event, then
react to each type.

Run with a gateway: SLUICE_URL=ws://127.0.0.1:7878/v1/ws python event_structure.py
"""

import asyncio
import sys

from sluice import SandboxClient


async def main(code: str) -> None:
    async with SandboxClient() as client:
        # Example event handling
        async for event in client.execute_code_stream(code):
            print(f"Event {event.sequence} at {event.timestamp}: {event.type}")

            if event.type == 'stdout':
                print(f"Output: {event.data}")
            if event.type == 'stderr':
                print(f"Error: {event.data}")
            if event.type == 'started':
                print("Execution started")
            if event.type == 'completed':
                print("Execution finished")
            if event.type == 'error':
                print(f"Error occurred: {event.data}")
            if event.type == 'resource_limit':
                print(f"Resource limit exceeded: {event.data}")


if __name__ == "__main__":
    code = sys.argv[1] if len(sys.argv) > 1 else "print('hello')"
    asyncio.run(main(code))
