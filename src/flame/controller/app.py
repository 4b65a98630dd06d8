"""Wiring of the controller: the database, the stores and the servicers."""

from __future__ import annotations

from dataclasses import dataclass

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from flame.agent.v1 import agent_service_pb2, agent_service_pb2_grpc
from flame.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from flame.compute.v1 import compute_service_pb2, compute_service_pb2_grpc
from flame.controller.jobbuilder import PlatformParams
from flame.controller.lifecycle import JobManager
from flame.controller.servicers.agents import AgentServicer
from flame.controller.servicers.computes import ComputeServicer
from flame.controller.servicers.datasets import DatasetServicer
from flame.controller.servicers.designs import DesignServicer
from flame.controller.servicers.jobs import JobServicer
from flame.controller.servicers.users import AuthServicer, UserServicer
from flame.controller.store.computes import ComputeStore
from flame.controller.store.datasets import DatasetStore
from flame.controller.store.designs import DesignStore
from flame.controller.store.documents import Document
from flame.controller.store.jobs import JobStore
from flame.controller.store.peers import PeerStore
from flame.controller.store.users import UserStore
from flame.controller.taskkeys import TaskKeys
from flame.data.v1 import dataset_service_pb2, dataset_service_pb2_grpc
from flame.design.v1 import design_service_pb2, design_service_pb2_grpc
from flame.job.v1 import job_service_pb2, job_service_pb2_grpc
from flame.rpc.errors import AlreadyExists
from flame.rpc.server import Service, bind
from flame.user.v1 import user_service_pb2, user_service_pb2_grpc

__all__ = [
    "ControllerSettings",
    "Stores",
    "bootstrap_admin",
    "controller_services",
    "open_database",
    "open_stores",
]

DEFAULT_MAX_CODE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ControllerSettings:
    """What the controller is configured with besides its database."""

    params: PlatformParams
    max_code_bytes: int = DEFAULT_MAX_CODE_BYTES


@dataclass(frozen=True)
class Stores:
    """Every store of the controller, over one database."""

    users: UserStore
    designs: DesignStore
    datasets: DatasetStore
    computes: ComputeStore
    jobs: JobStore
    peers: PeerStore
    task_keys: TaskKeys


async def open_database(
    uri: str, name: str
) -> tuple[AsyncMongoClient[Document], AsyncDatabase[Document]]:
    """Connect to MongoDB and check it answers."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=10_000, tz_aware=True
    )
    await client.admin.command("ping")
    return client, client[name]


async def open_stores(db: AsyncDatabase[Document]) -> Stores:
    """The stores over `db`, with their indexes in place."""
    stores = Stores(
        users=UserStore(db),
        designs=DesignStore(db),
        datasets=DatasetStore(db),
        computes=ComputeStore(db),
        jobs=JobStore(db),
        peers=PeerStore(db),
        task_keys=await TaskKeys.load(db),
    )
    for store in (stores.users, stores.designs, stores.datasets, stores.jobs, stores.peers):
        await store.ensure_indexes()
    return stores


async def bootstrap_admin(stores: Stores, user_id: str, token: str) -> None:
    """Create the first admin with a known token, unless that user exists already.

    This is how `flamectl up` gets an admin without a chicken-and-egg problem:
    it generates the token and hands it to the controller through the environment.
    """
    try:
        await stores.users.create_user(user_id, is_admin=True)
    except AlreadyExists:
        return  # an earlier start created it, with its token
    await stores.users.create_token(user_id, "bootstrap admin token", secret=token)


def controller_services(
    stores: Stores, settings: ControllerSettings, manager: JobManager
) -> list[Service]:
    """The services a controller serves."""
    return [
        bind(
            design_service_pb2.DESCRIPTOR.services_by_name["DesignService"],
            design_service_pb2_grpc.add_DesignServiceServicer_to_server,
            DesignServicer(stores.designs, stores.jobs, max_code_bytes=settings.max_code_bytes),
        ),
        bind(
            dataset_service_pb2.DESCRIPTOR.services_by_name["DatasetService"],
            dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server,
            DatasetServicer(stores.datasets, stores.computes, stores.jobs),
        ),
        bind(
            job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
            job_service_pb2_grpc.add_JobServiceServicer_to_server,
            JobServicer(stores.jobs, stores.designs, stores.datasets, settings.params, manager),
        ),
        bind(
            user_service_pb2.DESCRIPTOR.services_by_name["UserService"],
            user_service_pb2_grpc.add_UserServiceServicer_to_server,
            UserServicer(stores.users),
        ),
        bind(
            compute_service_pb2.DESCRIPTOR.services_by_name["ComputeService"],
            compute_service_pb2_grpc.add_ComputeServiceServicer_to_server,
            ComputeServicer(stores.computes, stores.jobs, manager, stores.task_keys),
        ),
        bind(
            agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"],
            agent_service_pb2_grpc.add_AgentServiceServicer_to_server,
            AgentServicer(stores.jobs, stores.designs, stores.peers, manager, stores.task_keys),
        ),
        bind(
            auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"],
            auth_service_pb2_grpc.add_AuthServiceServicer_to_server,
            AuthServicer(stores.users),
        ),
    ]
