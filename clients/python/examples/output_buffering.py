"""Seed example "Output Buffering": print output in chunks of at least
``buffer_size`` characters.

Run with a gateway: SLUICE_URL=ws://127.0.0.1:7878/v1/ws python output_buffering.py
"""

import asyncio
import sys

from sluice import SandboxClient

client = SandboxClient()


async def buffer_output(code: str, buffer_size: int = 1024):
    buffer = []
    buffer_bytes = 0

    async for event in client.execute_code_stream(code):
        if event.type in ('stdout', 'stderr'):
            buffer.append(event.data)
            buffer_bytes += len(event.data)

            if buffer_bytes >= buffer_size:
                print("".join(buffer))
                buffer = []
                buffer_bytes = 0

        elif event.type == 'completed':
            if buffer:  # Flush remaining buffer
                print("".join(buffer))


async def main(code: str, buffer_size: int) -> None:
    await client.setup()
    try:
        await buffer_output(code, buffer_size)
    finally:
        await client.cleanup()


if __name__ == "__main__":
    code = sys.argv[1] if len(sys.argv) > 1 else "for i in range(500):\n    print(f'line {i}')"
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    asyncio.run(main(code, size))
