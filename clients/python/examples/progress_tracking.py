"""Seed example "Progress Tracking": time each event against the start.

Run with a gateway: SLUICE_URL=ws://127.0.0.1:7878/v1/ws python progress_tracking.py
"""

import asyncio
import sys
import time

from sluice import SandboxClient

client = SandboxClient()


async def track_progress(code: str):
    start_time = time.time()
    event_count = 0

    async for event in client.execute_code_stream(code):
        event_count += 1
        elapsed = event.timestamp - start_time

        print(f"Event {event_count} at {elapsed:.2f}s: {event.type}")

        if event.type == 'completed':
            print(f"Execution completed in {elapsed:.2f} seconds")


async def main(code: str) -> None:
    await client.setup()
    try:
        await track_progress(code)
    finally:
        await client.cleanup()


if __name__ == "__main__":
    code = sys.argv[1] if len(sys.argv) > 1 else "import time\nfor i in range(3):\n    print(i)\n    time.sleep(0.2)"
    asyncio.run(main(code))
