"""The VPC the worker (and, in HIPAA mode, the Lambda functions) run in.

Normal mode costs nothing while idle: two public subnets and an internet gateway; the
worker gets a public IP and talks to OpenAI, SQS and ``@connections`` directly. No NAT
gateway, no VPC endpoints (both bill by the hour).

HIPAA mode keeps compute off the internet: the worker and the functions live in private
subnets with no public IP. A NAT gateway per zone carries the traffic that has no private
path (OpenAI, and the public ``@connections`` endpoint); gateway endpoints (DynamoDB, S3)
and interface endpoints (SQS, ECR, CloudWatch Logs, Secrets Manager, KMS) keep AWS API
traffic inside the VPC.
"""

from __future__ import annotations

import ipaddress

import pulumi
import pulumi_aws as aws

from infra.aws_context import AwsContext
from infra.config import StackConfig

ZONE_COUNT = 2
ANYWHERE = "0.0.0.0/0"

GATEWAY_ENDPOINT_SERVICES = ("dynamodb", "s3")  # S3: ECR keeps image layers there
INTERFACE_ENDPOINT_SERVICES = ("sqs", "ecr.api", "ecr.dkr", "logs", "secretsmanager", "kms")
# Deliberately no "execute-api" interface endpoint. With private DNS on, it answers for
# *.execute-api.{region}.amazonaws.com, which is also the host of our *public* WebSocket
# API's @connections endpoint; VPC endpoints only reach private APIs, so every post to a
# caller would fail with 403 Forbidden (AWS knowledge center: "api-gateway-vpc-connections").
# The worker reaches @connections through the NAT gateway instead.


def subnet_cidrs(vpc_cidr: str) -> tuple[list[str], list[str]]:
    """Public and private subnet ranges: the VPC split in 16, first two public, next two private."""
    network = ipaddress.ip_network(vpc_cidr)
    blocks = [str(b) for b in network.subnets(prefixlen_diff=4)]
    return blocks[:ZONE_COUNT], blocks[ZONE_COUNT : 2 * ZONE_COUNT]


class Network(pulumi.ComponentResource):
    """VPC, subnets, routes, security groups and (HIPAA) NAT and VPC endpoints."""

    vpc_id: pulumi.Output[str]
    worker_subnet_ids: list[pulumi.Output[str]]
    worker_security_group_id: pulumi.Output[str]
    worker_assign_public_ip: bool
    # Lambda VPC attachment, HIPAA mode only (outside it the functions need no VPC).
    lambda_subnet_ids: list[pulumi.Output[str]] | None
    lambda_security_group_id: pulumi.Output[str] | None

    def __init__(
        self,
        name: str,
        config: StackConfig,
        ctx: AwsContext,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("voice-agent:network:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        zones = aws.get_availability_zones_output(
            state="available",
            # Regular zones only: Local and Wavelength Zones (opt-in) lack Fargate and NAT.
            filters=[
                aws.GetAvailabilityZonesFilterArgs(
                    name="opt-in-status", values=["opt-in-not-required"]
                )
            ],
            opts=pulumi.InvokeOptions(parent=self),
        ).names
        public_cidrs, private_cidrs = subnet_cidrs(config.vpc_cidr)

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=config.vpc_cidr,
            # Interface endpoints' private DNS needs both.
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags={"Name": config.name_prefix},
            opts=child,
        )
        # Take over the VPC's default security group and leave it without rules, so nothing
        # that lands in it by accident can talk to anything.
        aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", vpc_id=vpc.id, opts=child)

        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, opts=child)
        public_routes = aws.ec2.RouteTable(f"{name}-public", vpc_id=vpc.id, opts=child)
        aws.ec2.Route(
            f"{name}-public-default",
            route_table_id=public_routes.id,
            destination_cidr_block=ANYWHERE,
            gateway_id=igw.id,
            opts=child,
        )
        public_subnets = []
        for i, cidr in enumerate(public_cidrs):
            subnet = aws.ec2.Subnet(
                f"{name}-public-{i}",
                vpc_id=vpc.id,
                cidr_block=cidr,
                availability_zone=zones[i],
                # ECS assigns the worker's public IP itself; nothing else gets one.
                map_public_ip_on_launch=False,
                tags={"Name": f"{config.name_prefix}-public-{i}"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}", subnet_id=subnet.id, route_table_id=public_routes.id,
                opts=child,
            )  # fmt: skip
            public_subnets.append(subnet)

        self.vpc_id = vpc.id
        self.worker_security_group_id = self._https_out_group(
            f"{name}-worker", vpc.id, "voice-agent worker: HTTPS out only, nothing in", child
        )
        self.lambda_subnet_ids = None
        self.lambda_security_group_id = None

        if not config.hipaa:
            self.worker_subnet_ids = [s.id for s in public_subnets]
            self.worker_assign_public_ip = True
            self.register_outputs({"vpc_id": self.vpc_id})
            return

        private_subnets = []
        private_route_tables = []
        for i, cidr in enumerate(private_cidrs):
            subnet = aws.ec2.Subnet(
                f"{name}-private-{i}",
                vpc_id=vpc.id,
                cidr_block=cidr,
                availability_zone=zones[i],
                map_public_ip_on_launch=False,
                tags={"Name": f"{config.name_prefix}-private-{i}"},
                opts=child,
            )
            # One NAT gateway per zone, so losing a zone doesn't cut the other zone's calls
            # off from OpenAI.
            eip = aws.ec2.Eip(f"{name}-nat-{i}", domain="vpc", opts=child)
            nat = aws.ec2.NatGateway(
                f"{name}-nat-{i}",
                subnet_id=public_subnets[i].id,
                allocation_id=eip.id,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
            )
            routes = aws.ec2.RouteTable(f"{name}-private-{i}", vpc_id=vpc.id, opts=child)
            aws.ec2.Route(
                f"{name}-private-{i}-default",
                route_table_id=routes.id,
                destination_cidr_block=ANYWHERE,
                nat_gateway_id=nat.id,
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{i}", subnet_id=subnet.id, route_table_id=routes.id, opts=child
            )
            private_subnets.append(subnet)
            private_route_tables.append(routes)

        for service in GATEWAY_ENDPOINT_SERVICES:
            aws.ec2.VpcEndpoint(
                f"{name}-{service}",
                vpc_id=vpc.id,
                service_name=f"com.amazonaws.{config.region}.{service}",
                vpc_endpoint_type="Gateway",
                route_table_ids=[rt.id for rt in private_route_tables],
                opts=child,
            )

        endpoint_group = aws.ec2.SecurityGroup(
            f"{name}-endpoints",
            vpc_id=vpc.id,
            description="voice-agent VPC endpoints: HTTPS from inside the VPC only",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp", from_port=443, to_port=443, cidr_blocks=[config.vpc_cidr]
                )
            ],
            egress=[],  # endpoints only answer; no rule means no new outbound connection
            opts=child,
        )
        for service in INTERFACE_ENDPOINT_SERVICES:
            aws.ec2.VpcEndpoint(
                f"{name}-{service.replace('.', '-')}",
                vpc_id=vpc.id,
                service_name=f"com.amazonaws.{config.region}.{service}",
                vpc_endpoint_type="Interface",
                private_dns_enabled=True,
                subnet_ids=[s.id for s in private_subnets],
                security_group_ids=[endpoint_group.id],
                opts=child,
            )

        self.worker_subnet_ids = [s.id for s in private_subnets]
        self.worker_assign_public_ip = False
        self.lambda_subnet_ids = [s.id for s in private_subnets]
        self.lambda_security_group_id = self._https_out_group(
            f"{name}-lambda", vpc.id, "voice-agent handlers: HTTPS out only, nothing in", child
        )
        self.register_outputs({"vpc_id": self.vpc_id})

    @staticmethod
    def _https_out_group(
        name: str, vpc_id: pulumi.Output[str], description: str, opts: pulumi.ResourceOptions
    ) -> pulumi.Output[str]:
        # Everything these callers reach (AWS APIs, OpenAI, @connections) is HTTPS; DNS goes
        # to the VPC resolver, which security groups don't filter.
        group = aws.ec2.SecurityGroup(
            name,
            vpc_id=vpc_id,
            description=description,
            egress=[
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="tcp", from_port=443, to_port=443, cidr_blocks=[ANYWHERE]
                )
            ],
            opts=opts,
        )
        return group.id
