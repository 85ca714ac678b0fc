"""The CloudFormation stack as tests read it: parsed by cfn-lint's decoder, rendered for a given
set of parameters by a small evaluator of the intrinsic functions and rule functions it uses."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "deploy" / "cloudformation" / "collector-stack.yaml"
SOURCE_STACK = ROOT / "deploy" / "cloudformation" / "mirror-source-stack.yaml"


# A parameter set for the stack as an operator would pass it (the rest keep their defaults).
EXAMPLE_PARAMETERS = {
    "VpcId": "vpc-0123456789abcdef0",
    "SubnetA": "subnet-0aaaaaaaaaaaaaaaa",
    "SubnetB": "subnet-0bbbbbbbbbbbbbbbb",
    "SourceAEniId": "eni-0123456789abcdef0",
    "SourceACidr": "10.0.1.17/32",
    "SourceAVni": "4001",
    "SourceAInstanceId": "i-0123456789abcdef0",
    "SourceBEniId": "eni-0123456789abcdef1",
    "SourceBCidr": "10.0.2.31/32",
    "SourceBVni": "4002",
    "FilterExcludeCidr": "10.0.99.0/24",
    "KafkaBootstrapServers": "b-1.kafka.internal:9096,b-2.kafka.internal:9096",
    "KafkaBrokerSecurityGroupId": "sg-0123456789abcdef0",
    "BundleS3Uri": "s3://artifacts-123456789012/collector-bundle-0.1.0.tar.gz",
    "BundleSha256": "0" * 64,
}

# What AWS would look up for Fn::ValueOf: the subnets' zones and VPC.
SUBNET_ATTRIBUTES = {
    ("SubnetA", "AvailabilityZone"): "eu-west-1a",
    ("SubnetB", "AvailabilityZone"): "eu-west-1b",
    ("SubnetA", "VpcId"): "vpc-0123456789abcdef0",
    ("SubnetB", "VpcId"): "vpc-0123456789abcdef0",
}


def load_stack(path: Path = STACK) -> dict[str, Any]:
    template, errors = decode(str(path))
    assert not errors, errors
    assert isinstance(template, dict)
    return template


def parameter_defaults(template: Mapping[str, Any]) -> dict[str, str]:
    return {
        name: str(spec["Default"])
        for name, spec in template["Parameters"].items()
        if "Default" in spec
    }


class Resolver:
    """Just enough of CloudFormation's intrinsic and rule functions to render this stack.

    ``attributes`` answers Fn::ValueOf / Fn::ValueOfAll (what AWS would look up, such as a
    subnet's zone): {(parameter, attribute): value}.
    """

    def __init__(
        self,
        template: Mapping[str, Any],
        parameters: Mapping[str, str],
        attributes: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        self.template = template
        self.parameters = dict(parameters)
        self.attributes = dict(attributes or {})
        self.refs: dict[str, Any] = {
            "AWS::StackName": "mirror-test",
            "AWS::StackId": (
                "arn:aws:cloudformation:eu-west-1:123456789012:stack/mirror-test/"
                "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
            ),
            "AWS::Region": "eu-west-1",
            "AWS::AccountId": "123456789012",
            "AWS::Partition": "aws",
            "AWS::NoValue": None,
            **{name: f"{name.lower()}-id" for name in template["Resources"]},
            "MirrorFilterA": "tmf-0123456789abcdef0",
            **parameters,
            # a CommaDelimitedList parameter is a list to the functions that take it
            **{
                name: str(parameters[name]).split(",")
                for name, spec in template["Parameters"].items()
                if spec["Type"] == "CommaDelimitedList" and name in parameters
            },
        }
        self.conditions: dict[str, bool] = {}
        for name in template["Conditions"]:
            self.condition(name)

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self.resolve(self.template["Conditions"][name]))
        return self.conditions[name]

    def active(self, resource: Mapping[str, Any]) -> bool:
        return "Condition" not in resource or self.condition(resource["Condition"])

    def resources(self, kind: str | None = None) -> dict[str, dict[str, Any]]:
        """The resources this parameter set creates, with their properties resolved."""
        out = {}
        for name, resource in self.template["Resources"].items():
            if (kind is None or resource["Type"] == kind) and self.active(resource):
                out[name] = {**resource, "Properties": self.resolve(resource.get("Properties", {}))}
        return out

    def failed_rules(self) -> list[str]:
        """AssertDescription of every rule assertion these parameters violate."""
        failed = []
        for rule in self.template.get("Rules", {}).values():
            if "RuleCondition" in rule and not self.resolve(rule["RuleCondition"]):
                continue
            failed += [
                a["AssertDescription"] for a in rule["Assertions"] if not self.resolve(a["Assert"])
            ]
        return failed

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.resolve(item) for item in node]
            return [item for item in items if item is not None]
        if not isinstance(node, dict):
            return node
        if len(node) != 1:
            out = {key: self.resolve(value) for key, value in node.items()}
            return {key: value for key, value in out.items() if value is not None}
        ((key, value),) = node.items()
        if key == "Ref":
            return self.refs[value]
        if key == "Condition":
            return self.condition(value)
        if key == "Fn::If":
            name, then, otherwise = value
            return self.resolve(then if self.condition(name) else otherwise)
        if key == "Fn::Equals":
            left, right = (self.resolve(v) for v in value)
            return str(left) == str(right)
        if key == "Fn::Not":
            return not self.resolve(value[0])
        if key == "Fn::And":
            return all(self.resolve(v) for v in value)
        if key == "Fn::Or":
            return any(self.resolve(v) for v in value)
        if key == "Fn::Contains":
            items, item = (self.resolve(v) for v in value)
            return str(item) in [str(i) for i in items]
        if key == "Fn::EachMemberEquals":
            items, item = (self.resolve(v) for v in value)
            return all(str(i) == str(item) for i in items)
        if key == "Fn::ValueOf":
            parameter, attribute = value
            return self.attributes[(parameter, attribute)]
        if key == "Fn::ValueOfAll":
            kind, attribute = value
            names = [n for n, p in self.template["Parameters"].items() if p["Type"] == kind]
            return [self.attributes[(n, attribute)] for n in names]
        if key == "Fn::GetAtt":
            target = value if isinstance(value, list) else value.split(".", 1)
            return f"{target[0].lower()}-{target[1].lower()}"
        if key == "Fn::Select":
            index, items = self.resolve(value[0]), self.resolve(value[1])
            return items[int(index)]
        if key == "Fn::Split":
            separator, text = value[0], self.resolve(value[1])
            return str(text).split(separator)
        if key == "Fn::Join":
            separator, items = value[0], self.resolve(value[1])
            return separator.join(str(i) for i in items)
        if key == "Fn::Base64":
            return self.resolve(value)
        if key == "Fn::Sub":
            text, variables = (value, {}) if isinstance(value, str) else value
            names = {**self.refs, **{k: str(self.resolve(v)) for k, v in variables.items()}}

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if "." in name and name not in names:
                    resource, attribute = name.split(".", 1)
                    return f"{resource.lower()}-{attribute.lower()}"
                return str(names[name])

            return re.sub(r"\$\{([^}!]+)\}", substitute, text)
        return {key: self.resolve(value)}


def user_data_source(template: Mapping[str, Any]) -> Any:
    data = template["Resources"]["CollectorLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    return data["UserData"]["Fn::Base64"]["Fn::Sub"]


def heredoc(script: str, target: str) -> str:
    """The body of ``cat > TARGET <<'MARK'`` ... ``MARK`` in a shell script."""
    match = re.search(
        rf"^cat > {re.escape(target)} <<'(\w+)'\n(.*?)\n\1$", script, re.DOTALL | re.MULTILINE
    )
    assert match, f"no heredoc writes {target}"
    return match.group(2)
