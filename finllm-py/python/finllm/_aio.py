"""asyncio support for finllm.EngineStream (``async for token in engine.stream(...)``)."""

import asyncio


async def anext(stream):
    """The stream's next Token, read on a thread of the running loop's default executor (the
    native call releases the GIL while it waits); StopAsyncIteration at the end."""
    loop = asyncio.get_running_loop()
    token = await loop.run_in_executor(None, stream.next_token)
    if token is None:
        raise StopAsyncIteration
    return token
