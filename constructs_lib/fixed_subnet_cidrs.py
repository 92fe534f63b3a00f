"""Give an L2 ``ec2.Vpc`` the exact subnet CIDRs from config instead of CDK's sequential allocation.

CDK's default allocator packs subnets one after another (10.0.0.0/24, 10.0.1.0/24, 10.0.2.0/24, ...); the
platform's address plan puts each tier in its own block (public 10.0.0.x, app 10.0.10.x, data 10.0.20.x) so that
firewall rules and Terraform workspace templates can name a tier by range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jsii
from aws_cdk import aws_ec2 as ec2


@jsii.implements(ec2.IIpAddresses)
class FixedSubnetCidrs:
    """``IIpAddresses`` that hands out, per subnet group name, one configured CIDR per AZ in AZ order."""

    def __init__(self, vpc_cidr: str, cidrs_by_group: Mapping[str, Sequence[str]]):
        self._vpc_cidr = vpc_cidr
        self._cidrs_by_group = {name: list(cidrs) for name, cidrs in cidrs_by_group.items()}

    def allocate_vpc_cidr(self) -> ec2.VpcIpamOptions:
        return ec2.VpcIpamOptions(cidr_block=self._vpc_cidr)

    def allocate_subnets_cidr(self, *, requested_subnets, vpc_cidr) -> ec2.SubnetIpamOptions:
        next_index: dict[str, int] = {}
        allocated = []
        for request in requested_subnets:
            group = request.configuration.name
            if group not in self._cidrs_by_group:
                raise ValueError(f"no CIDRs configured for subnet group {group!r}")
            index = next_index.get(group, 0)
            cidrs = self._cidrs_by_group[group]
            if index >= len(cidrs):
                raise ValueError(f"subnet group {group!r} asks for more subnets than its {len(cidrs)} CIDRs")
            next_index[group] = index + 1
            allocated.append(ec2.AllocatedSubnet(cidr=cidrs[index]))
        return ec2.SubnetIpamOptions(allocated_subnets=allocated)
