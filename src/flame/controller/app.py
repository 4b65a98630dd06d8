"""Wiring of the controller: the database, the stores and the servicers."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from flame.agent.v1 import agent_service_pb2, agent_service_pb2_grpc
from flame.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from flame.compute.v1 import compute_service_pb2, compute_service_pb2_grpc
from flame.data.v1 import dataset_service_pb2, dataset_service_pb2_grpc
from flame.design.v1 import design_service_pb2, design_service_pb2_grpc
from flame.job.v1 import job_service_pb2, job_service_pb2_grpc
from flame.rpc.server import Service, bind
from flame.user.v1 import user_service_pb2, user_service_pb2_grpc

__all__ = ["controller_services", "open_database"]

Document = dict[str, Any]


async def open_database(
    uri: str, name: str
) -> tuple[AsyncMongoClient[Document], AsyncDatabase[Document]]:
    """Connect to MongoDB and check it answers."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(uri, serverSelectionTimeoutMS=10_000)
    await client.admin.command("ping")
    return client, client[name]


def controller_services(db: AsyncDatabase[Document], *, internal_key: str) -> list[Service]:
    """The services a controller serves."""
    del db, internal_key  # the resource servicers arrive with the control-plane issue
    return [
        bind(
            design_service_pb2.DESCRIPTOR.services_by_name["DesignService"],
            design_service_pb2_grpc.add_DesignServiceServicer_to_server,
            design_service_pb2_grpc.DesignServiceServicer(),
        ),
        bind(
            dataset_service_pb2.DESCRIPTOR.services_by_name["DatasetService"],
            dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server,
            dataset_service_pb2_grpc.DatasetServiceServicer(),
        ),
        bind(
            job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
            job_service_pb2_grpc.add_JobServiceServicer_to_server,
            job_service_pb2_grpc.JobServiceServicer(),
        ),
        bind(
            user_service_pb2.DESCRIPTOR.services_by_name["UserService"],
            user_service_pb2_grpc.add_UserServiceServicer_to_server,
            user_service_pb2_grpc.UserServiceServicer(),
        ),
        bind(
            compute_service_pb2.DESCRIPTOR.services_by_name["ComputeService"],
            compute_service_pb2_grpc.add_ComputeServiceServicer_to_server,
            compute_service_pb2_grpc.ComputeServiceServicer(),
        ),
        bind(
            agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"],
            agent_service_pb2_grpc.add_AgentServiceServicer_to_server,
            agent_service_pb2_grpc.AgentServiceServicer(),
        ),
        bind(
            auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"],
            auth_service_pb2_grpc.add_AuthServiceServicer_to_server,
            auth_service_pb2_grpc.AuthServiceServicer(),
        ),
    ]
