# Logic of the edge-ingress module, against a mock AWS provider (no credentials, no emulator).
# `command = plan` where the planned values are enough; `command = apply` on the mock where a test
# needs computed values (ARNs), pinned with override_resource so the assertions can name them.

mock_provider "aws" {
  mock_data "aws_region" {
    defaults = {
      name = "us-east-1"
    }
  }

  mock_data "aws_vpc" {
    defaults = {
      cidr_block = "10.0.0.0/16"
    }
  }
}

variables {
  name       = "gh-test"
  vpc_id     = "vpc-0123456789abcdef0"
  subnet_ids = ["subnet-aaaa", "subnet-bbbb"]
}

run "defaults_forward_http_to_the_nodeport_with_the_ready_health_check" {
  command = plan

  assert {
    condition     = aws_lb_target_group.this.port == 30080 && aws_lb_target_group.this.protocol == "HTTP"
    error_message = "The target group must be HTTP on the default NodePort 30080."
  }
  assert {
    condition     = aws_lb_target_group.this.target_type == "instance"
    error_message = "The default target type must be instance."
  }
  assert {
    condition     = aws_lb_target_group.this.health_check[0].path == "/_gatehouse/ready"
    error_message = "The default health check path must be the proxy's ready path /_gatehouse/ready."
  }
  assert {
    condition = (
      aws_lb_target_group.this.health_check[0].port == "traffic-port" &&
      aws_lb_target_group.this.health_check[0].matcher == "200" &&
      aws_lb_target_group.this.health_check[0].protocol == "HTTP"
    )
    error_message = "The default health check must be HTTP on the traffic port and expect 200."
  }
  assert {
    # A draining proxy fails readiness at once; the ALB must see that well within the
    # proxy's drain time (20 s in the chart, charts/gatehouse/values.yaml), so a rollout loses no request.
    condition = (
      aws_lb_target_group.this.health_check[0].interval * aws_lb_target_group.this.health_check[0].unhealthy_threshold <= 10 &&
      aws_lb_target_group.this.health_check[0].timeout < aws_lb_target_group.this.health_check[0].interval
    )
    error_message = "By default the ALB must take a target out within 10 s of its readiness failing (interval x unhealthy_threshold)."
  }
  assert {
    condition     = aws_lb_target_group.this.deregistration_delay == "30"
    error_message = "The default deregistration delay must be 30 seconds."
  }
  assert {
    condition     = aws_lb.this.internal == false && aws_lb.this.load_balancer_type == "application"
    error_message = "The default load balancer must be an internet-facing ALB."
  }
  assert {
    condition     = aws_lb_listener.http.port == 80 && aws_lb_listener.http.default_action[0].type == "forward"
    error_message = "Without a certificate the HTTP listener must forward to the target group."
  }
  assert {
    condition     = length(aws_lb_listener.https) == 0
    error_message = "Without a certificate there must be no HTTPS listener."
  }
  assert {
    condition     = keys(aws_vpc_security_group_ingress_rule.alb_ipv4) == ["80-0.0.0.0/0"]
    error_message = "Without a certificate only port 80 may be open, from 0.0.0.0/0 by default."
  }
}

run "a_certificate_adds_https_and_turns_http_into_a_redirect" {
  command = plan

  variables {
    certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d"
  }

  assert {
    condition     = length(aws_lb_listener.https) == 1
    error_message = "A certificate must create the HTTPS listener."
  }
  assert {
    condition = (
      aws_lb_listener.https[0].port == 443 &&
      aws_lb_listener.https[0].protocol == "HTTPS" &&
      aws_lb_listener.https[0].certificate_arn == "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d" &&
      aws_lb_listener.https[0].ssl_policy == "ELBSecurityPolicy-TLS13-1-2-2021-06" &&
      aws_lb_listener.https[0].default_action[0].type == "forward"
    )
    error_message = "The HTTPS listener must serve the certificate on 443 with the TLS 1.3 policy and forward."
  }
  assert {
    condition = (
      length(aws_lb_listener.http.default_action) == 1 &&
      aws_lb_listener.http.default_action[0].type == "redirect" &&
      aws_lb_listener.http.default_action[0].redirect[0].protocol == "HTTPS" &&
      aws_lb_listener.http.default_action[0].redirect[0].port == "443" &&
      aws_lb_listener.http.default_action[0].redirect[0].status_code == "HTTP_301"
    )
    error_message = "With a certificate the HTTP listener must only redirect to HTTPS (301)."
  }
  assert {
    condition     = toset(keys(aws_vpc_security_group_ingress_rule.alb_ipv4)) == toset(["80-0.0.0.0/0", "443-0.0.0.0/0"])
    error_message = "With a certificate ports 80 and 443 must be open."
  }
}

run "without_a_node_security_group_nothing_is_added_to_it_and_egress_goes_to_the_vpc" {
  command = plan

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.node_from_alb) == 0 && length(aws_vpc_security_group_egress_rule.alb_to_node_sg) == 0
    error_message = "No rule may reference a node security group that was not given."
  }
  assert {
    condition     = length(aws_vpc_security_group_egress_rule.alb_to_cidr) == 1 && aws_vpc_security_group_egress_rule.alb_to_cidr["30080-0"].from_port == 30080
    error_message = "Without a node security group the ALB must reach the NodePort in the VPC's CIDR."
  }
}

run "a_node_security_group_lets_the_alb_reach_the_nodeport_and_health_check_port" {
  command = plan

  variables {
    node_security_group_id = "sg-0nodes"
    health_check_port      = "8081"
  }

  assert {
    condition     = toset(keys(aws_vpc_security_group_ingress_rule.node_from_alb)) == toset(["30080", "8081"])
    error_message = "The node security group must get one rule for the NodePort and one for the health check port."
  }
  assert {
    condition = alltrue([
      for port, rule in aws_vpc_security_group_ingress_rule.node_from_alb :
      rule.security_group_id == "sg-0nodes" && rule.from_port == tonumber(port) && rule.to_port == tonumber(port) && rule.ip_protocol == "tcp"
    ])
    error_message = "Each node rule must be on the node security group, for exactly its port, over TCP."
  }
  assert {
    condition     = toset(keys(aws_vpc_security_group_egress_rule.alb_to_node_sg)) == toset(["30080", "8081"]) && length(aws_vpc_security_group_egress_rule.alb_to_cidr) == 0
    error_message = "With a node security group the ALB's egress must go to that group only."
  }
}

run "the_health_check_port_on_the_traffic_port_opens_only_the_nodeport" {
  command = plan

  variables {
    node_security_group_id = "sg-0nodes"
    node_port              = 31000
  }

  assert {
    condition     = keys(aws_vpc_security_group_ingress_rule.node_from_alb) == ["31000"]
    error_message = "With health_check_port = traffic-port only the NodePort may be opened on the nodes."
  }
}

run "handshake_output_describes_the_target_group_for_the_provisioner" {
  command = apply

  variables {
    target_type          = "ip"
    node_port            = 30090
    deregistration_delay = 15
  }

  override_resource {
    target = aws_lb_target_group.this
    values = {
      arn  = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/gh-test/0123456789abcdef"
      name = "gh-test"
    }
  }
  override_resource {
    target = aws_lb.this
    values = {
      arn      = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/gh-test/0123456789abcdef"
      name     = "gh-test"
      dns_name = "gh-test-1234567890.us-east-1.elb.amazonaws.com"
    }
  }

  assert {
    # Compared as JSON: a literal's null has no type of its own, so `==` on the objects would
    # always be false.
    condition = jsonencode(output.gatehouse) == jsonencode({
      schema_version               = 1
      region                       = "us-east-1"
      load_balancer_arn            = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/gh-test/0123456789abcdef"
      load_balancer_name           = "gh-test"
      load_balancer_dns_name       = "gh-test-1234567890.us-east-1.elb.amazonaws.com"
      target_group_arn             = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/gh-test/0123456789abcdef"
      target_group_name            = "gh-test"
      target_type                  = "ip"
      node_port                    = 30090
      protocol                     = "HTTP"
      health_check_path            = "/_gatehouse/ready"
      health_check_port            = "traffic-port"
      deregistration_delay_seconds = 15
      vpc_id                       = "vpc-0123456789abcdef0"
      cluster_name                 = null
    })
    error_message = "The gatehouse handshake output must carry exactly the agreed fields and values."
  }
  assert {
    condition     = length([for k in keys(aws_lb_target_group.this.tags) : k if startswith(k, "gatehouse.dev/")]) == 0
    error_message = "Without cluster_name the target group carries no handshake tags."
  }
}

run "with_a_cluster_name_the_target_group_carries_the_handshake_as_tags" {
  command = plan

  variables {
    cluster_name = "prod-eu"
    node_port    = 30090
    # A user's tag of the same key does not override the handshake.
    tags = { team = "edge", "gatehouse.dev/cluster" = "other" }
  }

  assert {
    condition = aws_lb_target_group.this.tags == tomap({
      team                              = "edge"
      "gatehouse.dev/cluster"           = "prod-eu"
      "gatehouse.dev/handshake-version" = "1"
      "gatehouse.dev/node-port"         = "30090"
    })
    error_message = "The target group must carry exactly the handshake tags (cluster, schema version, NodePort) beside the user's."
  }
  assert {
    condition     = aws_lb.this.tags["gatehouse.dev/cluster"] == "other"
    error_message = "Only the target group carries the handshake: the provisioner looks up target groups alone."
  }
  assert {
    condition     = output.gatehouse.cluster_name == "prod-eu"
    error_message = "The handshake output names the cluster too."
  }
}

run "a_cluster_name_outside_the_eks_rule_is_refused" {
  command = plan

  variables {
    cluster_name = "prod/eu"
  }

  expect_failures = [var.cluster_name]
}

run "provisioner_policy_registers_only_in_this_target_group" {
  command = apply

  override_resource {
    target = aws_lb_target_group.this
    values = {
      arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/gh-test/0123456789abcdef"
    }
  }

  assert {
    condition     = length(jsondecode(output.iam_policy_json).Statement) == 3
    error_message = "The provisioner policy must have exactly three statements."
  }
  assert {
    condition = anytrue([
      for s in jsondecode(output.iam_policy_json).Statement :
      s.Effect == "Allow" &&
      toset(s.Action) == toset(["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"]) &&
      s.Resource == "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/gh-test/0123456789abcdef"
    ])
    error_message = "RegisterTargets and DeregisterTargets must be granted on exactly this target group's ARN."
  }
  assert {
    condition = anytrue([
      for s in jsondecode(output.iam_policy_json).Statement :
      s.Effect == "Allow" &&
      toset(s.Action) == toset([
        "elasticloadbalancing:DescribeTags",
        "elasticloadbalancing:DescribeTargetGroups",
        "elasticloadbalancing:DescribeTargetHealth",
        "elasticloadbalancing:DescribeTargetGroupAttributes",
      ]) &&
      s.Resource == "*"
    ])
    error_message = "The ELBv2 Describe* calls (no resource-level permissions in ELBv2) must be granted on *."
  }
  assert {
    condition = anytrue([
      for s in jsondecode(output.iam_policy_json).Statement :
      s.Effect == "Allow" && toset(s.Action) == toset(["ec2:DescribeVpcs"]) && s.Resource == "*"
    ])
    error_message = "ec2:DescribeVpcs (the VPC's CIDR blocks, for ip targets outside them) must be granted on *."
  }
  assert {
    condition = toset(flatten([for s in jsondecode(output.iam_policy_json).Statement : s.Action])) == toset([
      "elasticloadbalancing:RegisterTargets",
      "elasticloadbalancing:DeregisterTargets",
      "elasticloadbalancing:DescribeTargetGroups",
      "elasticloadbalancing:DescribeTargetHealth",
      "elasticloadbalancing:DescribeTargetGroupAttributes",
      "elasticloadbalancing:DescribeTags",
      "ec2:DescribeVpcs",
    ])
    error_message = "The provisioner policy must grant nothing beyond the seven calls the provisioner makes."
  }
  assert {
    condition     = length(aws_iam_policy.provisioner) == 0 && output.iam_policy_arn == null
    error_message = "No IAM policy may be created unless create_iam_policy is true."
  }
}

run "create_iam_policy_creates_the_policy_from_the_same_document" {
  command = apply

  variables {
    create_iam_policy = true
  }

  assert {
    condition     = length(aws_iam_policy.provisioner) == 1 && aws_iam_policy.provisioner[0].name == "gh-test-gatehouse-provisioner"
    error_message = "create_iam_policy must create the policy named <name>-gatehouse-provisioner."
  }
  assert {
    condition     = aws_iam_policy.provisioner[0].policy == output.iam_policy_json
    error_message = "The created policy must be the iam_policy_json document."
  }
}

run "tags_reach_every_resource" {
  command = plan

  variables {
    tags = { team = "edge" }
  }

  assert {
    condition = alltrue([
      aws_lb.this.tags["team"] == "edge",
      aws_lb_target_group.this.tags["team"] == "edge",
      aws_security_group.alb.tags["team"] == "edge",
      aws_lb_listener.http.tags["team"] == "edge",
      aws_vpc_security_group_ingress_rule.alb_ipv4["80-0.0.0.0/0"].tags["team"] == "edge",
    ])
    error_message = "The tags variable must be applied to every resource."
  }
}

run "internal_load_balancer" {
  command = plan

  variables {
    internal            = true
    ingress_cidr_blocks = ["10.0.0.0/8", "192.168.0.0/16"]
  }

  assert {
    condition     = aws_lb.this.internal == true
    error_message = "internal = true must create an internal load balancer."
  }
  assert {
    condition     = toset(keys(aws_vpc_security_group_ingress_rule.alb_ipv4)) == toset(["80-10.0.0.0/8", "80-192.168.0.0/16"])
    error_message = "Only the given CIDR blocks may reach the listener."
  }
}

################################################################################
# Invalid input is refused before anything is planned
################################################################################

run "target_type_must_be_instance_or_ip" {
  command = plan
  variables {
    target_type = "lambda"
  }
  expect_failures = [var.target_type]
}

run "node_port_above_65535_is_refused" {
  command = plan
  variables {
    node_port = 70000
  }
  expect_failures = [var.node_port]
}

run "node_port_zero_is_refused" {
  command = plan
  variables {
    node_port = 0
  }
  expect_failures = [var.node_port]
}

run "names_longer_than_32_characters_are_refused" {
  command = plan
  variables {
    name = "gatehouse-edge-ingress-0123456789a"
  }
  expect_failures = [var.name]
}

run "names_with_underscores_are_refused" {
  command = plan
  variables {
    name = "gatehouse_edge"
  }
  expect_failures = [var.name]
}

run "a_health_check_path_without_leading_slash_is_refused" {
  command = plan
  variables {
    health_check_path = "_gatehouse/ready"
  }
  expect_failures = [var.health_check_path]
}

run "a_health_check_port_that_is_not_a_port_is_refused" {
  command = plan
  variables {
    health_check_port = "http"
  }
  expect_failures = [var.health_check_port]
}

run "one_subnet_is_refused" {
  command = plan
  variables {
    subnet_ids = ["subnet-aaaa"]
  }
  expect_failures = [var.subnet_ids]
}

run "a_certificate_that_is_not_an_arn_is_refused" {
  command = plan
  variables {
    certificate_arn = "my-certificate"
  }
  expect_failures = [var.certificate_arn]
}

run "an_ingress_cidr_without_prefix_length_is_refused" {
  command = plan
  variables {
    ingress_cidr_blocks = ["10.0.0.1"]
  }
  expect_failures = [var.ingress_cidr_blocks]
}

run "a_negative_deregistration_delay_is_refused" {
  command = plan
  variables {
    deregistration_delay = -1
  }
  expect_failures = [var.deregistration_delay]
}

run "a_health_check_timeout_not_below_the_interval_is_refused" {
  command = plan
  variables {
    health_check_interval = 5
    health_check_timeout  = 5
  }
  expect_failures = [aws_lb_target_group.this]
}
