"""The benchmark's gRPC channel reaches our own server directly, whatever proxy the environment names."""

from __future__ import annotations

import asyncio

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from llm_deploy.bench.stream_client import direct_channel


class LiveServer(service_pb2_grpc.GRPCInferenceServiceServicer):
    async def ServerLive(self, request, context):  # noqa: N802 - the service's method name
        return service_pb2.ServerLiveResponse(live=True)


async def _ask_live(open_channel, monkeypatch) -> bool:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(LiveServer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        # Set after the server is up: gRPC reads the proxy from the environment per channel.
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
        monkeypatch.setenv("grpc_proxy", "http://127.0.0.1:9")
        async with open_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            try:
                return (await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=5)).live
            except grpc.aio.AioRpcError:
                return False
    finally:
        await server.stop(None)


def test_direct_channel_ignores_a_proxy_in_the_environment(monkeypatch):
    for name in ("no_proxy", "NO_PROXY", "no_grpc_proxy"):
        monkeypatch.delenv(name, raising=False)
    # What a plain channel does behind that proxy: the request goes to the proxy and fails.
    assert asyncio.run(_ask_live(grpc.aio.insecure_channel, monkeypatch)) is False
    assert asyncio.run(_ask_live(direct_channel, monkeypatch)) is True
