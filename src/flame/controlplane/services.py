"""The public control-plane services: served by the controller, and exposed to
users and agents by the apiserver, which forwards them unchanged."""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor

from flame.agent.v1 import agent_service_pb2
from flame.compute.v1 import compute_service_pb2
from flame.data.v1 import dataset_service_pb2
from flame.design.v1 import design_service_pb2
from flame.job.v1 import job_service_pb2
from flame.user.v1 import user_service_pb2

__all__ = ["PUBLIC_SERVICES"]

PUBLIC_SERVICES: tuple[ServiceDescriptor, ...] = (
    design_service_pb2.DESCRIPTOR.services_by_name["DesignService"],
    dataset_service_pb2.DESCRIPTOR.services_by_name["DatasetService"],
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
    user_service_pb2.DESCRIPTOR.services_by_name["UserService"],
    compute_service_pb2.DESCRIPTOR.services_by_name["ComputeService"],
    agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"],
)
