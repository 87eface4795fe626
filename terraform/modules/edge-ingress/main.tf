data "aws_region" "current" {}

# Only read when the egress CIDRs default to the VPC's own block.
data "aws_vpc" "this" {
  count = var.node_security_group_id == null && var.target_cidr_blocks == null ? 1 : 0

  id = var.vpc_id
}

locals {
  https_enabled     = var.certificate_arn != null
  target_group_name = coalesce(var.target_group_name, var.name)

  # Ports the load balancer opens towards the targets: the traffic port, plus the health check port
  # when it is a separate one.
  target_ports = toset(distinct(compact([
    tostring(var.node_port),
    var.health_check_port == "traffic-port" ? "" : var.health_check_port,
  ])))

  listener_ports = local.https_enabled ? toset(["80", "443"]) : toset(["80"])

  # The handshake as the target group's tags, for `gatehouse-provisioner --cluster`: which cluster
  # the group serves, which handshake schema, and the NodePort (the group's own port says it too,
  # but the provisioner checks the live group against what the module meant). Everything else it
  # needs is the group's own (type, address family, VPC, health check, deregistration delay).
  # Merged last, so `tags` cannot override them.
  handshake_tags = var.cluster_name == null ? {} : {
    "gatehouse.dev/cluster"           = var.cluster_name
    "gatehouse.dev/handshake-version" = "1"
    "gatehouse.dev/node-port"         = tostring(var.node_port)
  }

  # Egress to CIDRs only when there is no node security group to point at. The VPC's block is only
  # known after apply when the VPC is created alongside, so rules are keyed by index, not by CIDR.
  target_cidr_blocks = var.node_security_group_id != null ? [] : (
    var.target_cidr_blocks != null ? var.target_cidr_blocks : [data.aws_vpc.this[0].cidr_block]
  )
  target_cidr_rules = {
    for pair in setproduct(local.target_ports, range(length(local.target_cidr_blocks))) :
    "${pair[0]}-${pair[1]}" => { port = pair[0], cidr = local.target_cidr_blocks[pair[1]] }
  }
}

################################################################################
# Security group of the load balancer
################################################################################

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "gatehouse edge ALB ${var.name}: listeners from the allowed CIDRs, traffic to the nodes' NodePort"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-alb" })
}

resource "aws_vpc_security_group_ingress_rule" "alb_ipv4" {
  for_each = { for pair in setproduct(local.listener_ports, var.ingress_cidr_blocks) : "${pair[0]}-${pair[1]}" => pair }

  security_group_id = aws_security_group.alb.id
  description       = "Listener ${each.value[0]} from ${each.value[1]}"
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value[0])
  to_port           = tonumber(each.value[0])
  cidr_ipv4         = each.value[1]

  tags = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_ipv6" {
  for_each = { for pair in setproduct(local.listener_ports, var.ingress_ipv6_cidr_blocks) : "${pair[0]}-${pair[1]}" => pair }

  security_group_id = aws_security_group.alb.id
  description       = "Listener ${each.value[0]} from ${each.value[1]}"
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value[0])
  to_port           = tonumber(each.value[0])
  cidr_ipv6         = each.value[1]

  tags = var.tags
}

resource "aws_vpc_security_group_egress_rule" "alb_to_node_sg" {
  for_each = var.node_security_group_id == null ? toset([]) : local.target_ports

  security_group_id            = aws_security_group.alb.id
  description                  = "To the nodes on ${each.value}"
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.value)
  to_port                      = tonumber(each.value)
  referenced_security_group_id = var.node_security_group_id

  tags = var.tags
}

resource "aws_vpc_security_group_egress_rule" "alb_to_cidr" {
  for_each = local.target_cidr_rules

  security_group_id = aws_security_group.alb.id
  description       = "To the targets on ${each.value.port}"
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value.port)
  to_port           = tonumber(each.value.port)
  cidr_ipv4         = each.value.cidr

  tags = var.tags
}

# The one rule this module adds to a security group it does not own: the nodes accept the load
# balancer on the NodePort (and health check port).
resource "aws_vpc_security_group_ingress_rule" "node_from_alb" {
  for_each = var.node_security_group_id == null ? toset([]) : local.target_ports

  security_group_id            = var.node_security_group_id
  description                  = "gatehouse edge ALB ${var.name} to the NodePort ${each.value}"
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.value)
  to_port                      = tonumber(each.value)
  referenced_security_group_id = aws_security_group.alb.id

  tags = var.tags
}

################################################################################
# Load balancer and listeners
################################################################################

resource "aws_lb" "this" {
  #checkov:skip=CKV_AWS_150:Deletion protection is the enable_deletion_protection variable (off by default so examples can be destroyed).
  #checkov:skip=CKV_AWS_91:Access logs are the access_logs variable; they need a bucket the caller owns.
  #checkov:skip=CKV2_AWS_28:WAF is attached by the caller (aws_wafv2_web_acl_association with output load_balancer_arn).
  #checkov:skip=CKV2_AWS_20:HTTP redirects to HTTPS whenever certificate_arn is set; HTTP-only is for internal and emulator use.
  name               = var.name
  load_balancer_type = "application"
  internal           = var.internal
  security_groups    = [aws_security_group.alb.id]
  subnets            = var.subnet_ids

  idle_timeout               = var.idle_timeout
  enable_deletion_protection = var.enable_deletion_protection
  # Requests with header names that are not valid HTTP never reach the proxy.
  drop_invalid_header_fields = true

  dynamic "access_logs" {
    for_each = var.access_logs == null ? [] : [var.access_logs]

    content {
      enabled = true
      bucket  = access_logs.value.bucket
      prefix  = access_logs.value.prefix
    }
  }

  tags = var.tags
}

resource "aws_lb_target_group" "this" {
  #checkov:skip=CKV_AWS_378:gatehouse-proxy on the NodePort speaks HTTP; TLS ends at the HTTPS listener.
  name                 = local.target_group_name
  vpc_id               = var.vpc_id
  target_type          = var.target_type
  port                 = var.node_port
  protocol             = "HTTP"
  deregistration_delay = var.deregistration_delay

  health_check {
    enabled             = true
    protocol            = "HTTP"
    path                = var.health_check_path
    port                = var.health_check_port
    matcher             = "200"
    interval            = var.health_check_interval
    timeout             = var.health_check_timeout
    healthy_threshold   = var.healthy_threshold
    unhealthy_threshold = var.unhealthy_threshold
  }

  tags = merge(var.tags, local.handshake_tags)

  lifecycle {
    precondition {
      condition     = var.health_check_timeout < var.health_check_interval
      error_message = "health_check_timeout (${var.health_check_timeout}) must be less than health_check_interval (${var.health_check_interval})."
    }
  }
}

resource "aws_lb_listener" "http" {
  #checkov:skip=CKV_AWS_2:Plain HTTP is served only when no certificate_arn is given; with one, this listener redirects to HTTPS.
  #checkov:skip=CKV_AWS_103:TLS policy is set on the HTTPS listener, not on this one.
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  dynamic "default_action" {
    for_each = local.https_enabled ? [1] : []

    content {
      type = "redirect"

      redirect {
        protocol    = "HTTPS"
        port        = "443"
        status_code = "HTTP_301"
      }
    }
  }

  dynamic "default_action" {
    for_each = local.https_enabled ? [] : [1]

    content {
      type             = "forward"
      target_group_arn = aws_lb_target_group.this.arn
    }
  }

  tags = var.tags
}

resource "aws_lb_listener" "https" {
  count = local.https_enabled ? 1 : 0

  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.ssl_policy
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  tags = var.tags
}

################################################################################
# IAM policy for gatehouse-provisioner
################################################################################

# Exactly the calls the provisioner makes (tests/tests/provisioner_iam_policy.rs compares this list
# with the SDK calls in provisioner/src/aws.rs). Registrations are the provisioner's; everything else
# about the target group is Terraform's, so no Modify*/Create*/Delete* is granted. Built with
# jsonencode rather than the aws_iam_policy_document data source, which a mock provider answers with
# a random string: this way the module's tests read the real document.
locals {
  provisioner_policy = {
    Version = "2012-10-17"
    Statement = [
      {
        Sid    = "ManageRegistrationsOfThisTargetGroup"
        Effect = "Allow"
        Action = [
          "elasticloadbalancing:DeregisterTargets",
          "elasticloadbalancing:RegisterTargets",
        ]
        Resource = aws_lb_target_group.this.arn
      },
      {
        # ELBv2's Describe* actions do not support resource-level permissions: AWS authorises them
        # only with Resource "*", so a statement scoped to the target group ARN would never match
        # them. All are read-only. DescribeTargetGroupAttributes reads the deregistration delay
        # (`sync --wait-drain` without a handshake); DescribeTags finds the target group by its
        # handshake tags (`--cluster`).
        Sid    = "ReadTargetGroupsAndTargetHealth"
        Effect = "Allow"
        Action = [
          "elasticloadbalancing:DescribeTags",
          "elasticloadbalancing:DescribeTargetGroupAttributes",
          "elasticloadbalancing:DescribeTargetGroups",
          "elasticloadbalancing:DescribeTargetHealth",
        ]
        Resource = "*"
      },
      {
        # The VPC's CIDR blocks: an `ip` target outside them must be registered with
        # AvailabilityZone=all. EC2's Describe* actions likewise need Resource "*".
        Sid      = "ReadTheVpcCidrBlocks"
        Effect   = "Allow"
        Action   = ["ec2:DescribeVpcs"]
        Resource = "*"
      },
    ]
  }
}

resource "aws_iam_policy" "provisioner" {
  count = var.create_iam_policy ? 1 : 0

  name        = coalesce(var.iam_policy_name, "${var.name}-gatehouse-provisioner")
  path        = var.iam_policy_path
  description = "gatehouse-provisioner: register and deregister targets in target group ${local.target_group_name}"
  policy      = jsonencode(local.provisioner_policy)

  tags = var.tags
}
