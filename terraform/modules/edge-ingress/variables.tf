################################################################################
# Naming and placement
################################################################################

variable "name" {
  description = "Name of the load balancer; also the default target group name and the prefix of the security group and IAM policy names. At most 32 characters: letters, digits and hyphens, not starting or ending with a hyphen (the ELBv2 naming rule)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9]([A-Za-z0-9-]{0,30}[A-Za-z0-9])?$", var.name)) && !startswith(lower(var.name), "internal-")
    error_message = "The name must be 1-32 letters, digits or hyphens, must not start or end with a hyphen, and must not start with \"internal-\"."
  }
}

variable "target_group_name" {
  description = "Name of the target group. Defaults to `name`. Same naming rule as `name`."
  type        = string
  default     = null

  validation {
    condition     = var.target_group_name == null || can(regex("^[A-Za-z0-9]([A-Za-z0-9-]{0,30}[A-Za-z0-9])?$", var.target_group_name))
    error_message = "The target group name must be 1-32 letters, digits or hyphens and must not start or end with a hyphen."
  }
}

variable "vpc_id" {
  description = "ID of the VPC the load balancer, its security group and the target group live in."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets of the load balancer, in at least two Availability Zones (public subnets for an internet-facing ALB)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "An Application Load Balancer needs subnets in at least two Availability Zones."
  }
}

variable "internal" {
  description = "Create an internal load balancer instead of an internet-facing one."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags applied to every resource the module creates."
  type        = map(string)
  default     = {}
}

variable "cluster_name" {
  description = "The Kubernetes cluster whose nodes the target group serves. When set, the target group carries the handshake as tags (gatehouse.dev/cluster, gatehouse.dev/handshake-version, gatehouse.dev/node-port), by which `gatehouse-provisioner --cluster <cluster_name>` (the Helm chart's clusterName) finds it; null: only the `gatehouse` output carries the handshake."
  type        = string
  default     = null

  validation {
    # EKS's cluster name rule; any such name is also a valid tag value.
    condition     = var.cluster_name == null || can(regex("^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$", var.cluster_name))
    error_message = "cluster_name must be 1-100 letters, digits, hyphens or underscores, starting with a letter or digit (the EKS cluster name rule)."
  }
}

################################################################################
# Who may reach the load balancer
################################################################################

variable "ingress_cidr_blocks" {
  description = "IPv4 CIDR blocks allowed to reach the listeners (port 80, and 443 when `certificate_arn` is set)."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = alltrue([for c in var.ingress_cidr_blocks : can(cidrnetmask(c))])
    error_message = "Every entry of ingress_cidr_blocks must be an IPv4 CIDR block, e.g. 10.0.0.0/8."
  }
}

variable "ingress_ipv6_cidr_blocks" {
  description = "IPv6 CIDR blocks allowed to reach the listeners."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.ingress_ipv6_cidr_blocks : can(cidrhost(c, 0)) && strcontains(c, ":")])
    error_message = "Every entry of ingress_ipv6_cidr_blocks must be an IPv6 CIDR block, e.g. ::/0."
  }
}

################################################################################
# Listeners
################################################################################

variable "certificate_arn" {
  description = "ARN of an ACM (or IAM) certificate. When set, an HTTPS listener on 443 serves it and the HTTP listener on 80 redirects to HTTPS; when null, the HTTP listener forwards to the target group."
  type        = string
  default     = null

  validation {
    condition     = var.certificate_arn == null || can(regex("^arn:[^:]+:(acm|iam):", var.certificate_arn))
    error_message = "certificate_arn must be an ACM or IAM certificate ARN (arn:aws:acm:...)."
  }
}

variable "ssl_policy" {
  description = "Security policy of the HTTPS listener."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "idle_timeout" {
  description = "Seconds a connection may be idle before the load balancer closes it. Keep it above the proxy's keep-alive expectations and below its idle timeout."
  type        = number
  default     = 60

  validation {
    condition     = var.idle_timeout >= 1 && var.idle_timeout <= 4000 && floor(var.idle_timeout) == var.idle_timeout
    error_message = "idle_timeout must be a whole number of seconds between 1 and 4000."
  }
}

variable "enable_deletion_protection" {
  description = "Protect the load balancer from deletion (turn on in production; it makes `terraform destroy` fail until turned off)."
  type        = bool
  default     = false
}

variable "access_logs" {
  description = "Where the load balancer writes access logs: an S3 bucket whose policy lets ELB write to it, and an optional key prefix. Null turns access logs off."
  type = object({
    bucket = string
    prefix = optional(string)
  })
  default = null
}

################################################################################
# Target group: the nodes' NodePort, where gatehouse-proxy listens
################################################################################

variable "node_port" {
  description = "Port the targets listen on: the NodePort of the gatehouse-proxy Service (Kubernetes' default NodePort range is 30000-32767), or the proxy's port for `ip` targets that are not nodes."
  type        = number
  default     = 30080

  validation {
    condition     = var.node_port >= 1 && var.node_port <= 65535 && floor(var.node_port) == var.node_port
    error_message = "node_port must be a TCP port, a whole number between 1 and 65535."
  }
}

variable "target_type" {
  description = "How targets are registered: `instance` (EC2 instance IDs, the usual choice for nodes) or `ip` (node IP addresses)."
  type        = string
  default     = "instance"

  validation {
    condition     = contains(["instance", "ip"], var.target_type)
    error_message = "target_type must be \"instance\" or \"ip\"."
  }
}

variable "deregistration_delay" {
  description = "Seconds the load balancer keeps draining a deregistered target before it stops sending it requests in flight."
  type        = number
  default     = 30

  validation {
    condition     = var.deregistration_delay >= 0 && var.deregistration_delay <= 3600 && floor(var.deregistration_delay) == var.deregistration_delay
    error_message = "deregistration_delay must be a whole number of seconds between 0 and 3600."
  }
}

variable "health_check_path" {
  description = "Path of the target group's HTTP health check: the proxy's readiness endpoint."
  type        = string
  default     = "/_gatehouse/ready"

  validation {
    condition     = startswith(var.health_check_path, "/") && length(var.health_check_path) <= 1024
    error_message = "health_check_path must start with \"/\" and be at most 1024 characters."
  }
}

variable "health_check_port" {
  description = "Port of the health check: `traffic-port` (the port each target is registered with) or a port number as a string."
  type        = string
  default     = "traffic-port"

  validation {
    condition     = var.health_check_port == "traffic-port" || (can(regex("^[0-9]{1,5}$", var.health_check_port)) && try(tonumber(var.health_check_port) >= 1 && tonumber(var.health_check_port) <= 65535, false))
    error_message = "health_check_port must be \"traffic-port\" or a port number between 1 and 65535, as a string."
  }
}

variable "health_check_interval" {
  description = "Seconds between health checks of one target. With unhealthy_threshold, it sets how soon a draining proxy leaves rotation (2 x 5 s = 10 s by default): keep that well inside the proxy's drain time (20 s in the chart, proxy.timeouts.drain)."
  type        = number
  default     = 5

  validation {
    condition     = var.health_check_interval >= 5 && var.health_check_interval <= 300
    error_message = "health_check_interval must be between 5 and 300 seconds."
  }
}

variable "health_check_timeout" {
  description = "Seconds without an answer after which a health check fails. Must be less than health_check_interval."
  type        = number
  default     = 2

  validation {
    condition     = var.health_check_timeout >= 2 && var.health_check_timeout <= 120
    error_message = "health_check_timeout must be between 2 and 120 seconds."
  }
}

variable "healthy_threshold" {
  description = "Consecutive successful health checks before a target counts as healthy."
  type        = number
  default     = 2

  validation {
    condition     = var.healthy_threshold >= 2 && var.healthy_threshold <= 10
    error_message = "healthy_threshold must be between 2 and 10."
  }
}

variable "unhealthy_threshold" {
  description = "Consecutive failed health checks before a target counts as unhealthy."
  type        = number
  default     = 2

  validation {
    condition     = var.unhealthy_threshold >= 2 && var.unhealthy_threshold <= 10
    error_message = "unhealthy_threshold must be between 2 and 10."
  }
}

################################################################################
# The way from the load balancer to the nodes
################################################################################

variable "node_security_group_id" {
  description = "Security group of the nodes. When set, the module adds to it the rule that lets the load balancer reach node_port (and a numeric health_check_port), and limits the load balancer's egress to that group."
  type        = string
  default     = null
}

variable "target_cidr_blocks" {
  description = "IPv4 CIDR blocks the load balancer may send traffic to when node_security_group_id is not set. Defaults to the VPC's CIDR block."
  type        = list(string)
  default     = null

  validation {
    condition     = var.target_cidr_blocks == null || alltrue([for c in coalesce(var.target_cidr_blocks, []) : can(cidrnetmask(c))])
    error_message = "Every entry of target_cidr_blocks must be an IPv4 CIDR block."
  }
}

################################################################################
# IAM for gatehouse-provisioner
################################################################################

variable "create_iam_policy" {
  description = "Create an aws_iam_policy from the provisioner's policy document (output `iam_policy_json`). Attach it to the role the provisioner runs as (IRSA or EKS Pod Identity)."
  type        = bool
  default     = false
}

variable "iam_policy_name" {
  description = "Name of the IAM policy created when create_iam_policy is true. Defaults to \"<name>-gatehouse-provisioner\"."
  type        = string
  default     = null
}

variable "iam_policy_path" {
  description = "Path of the IAM policy created when create_iam_policy is true."
  type        = string
  default     = "/"
}
