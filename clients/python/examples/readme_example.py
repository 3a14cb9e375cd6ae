"""The example of the package README: run a program, feed it input, read the result."""

import asyncio

from sluice import SandboxClient


async def main() -> None:
    async with SandboxClient() as client:  # $SLUICE_URL, or ws://127.0.0.1:7878/v1/ws
        async for event in client.execute_code_stream("print('hello')"):
            print(event.sequence, event.type, repr(event.data))
        execution = await client.execute("print(input()[::-1])")
        await execution.send_stdin("sluice\n", eof=True)
        result = await execution.wait()
        print(result.status, result.exit_code, result.stdout.strip())


asyncio.run(main())
