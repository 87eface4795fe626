################################################################################
# Handshake with gatehouse-provisioner
################################################################################

# The contract between this module and gatehouse-provisioner (see DESIGN.md). The provisioner reads
# it with `terraform output -json gatehouse` and checks the live target group against it. Fields are
# only ever added; bump schema_version for any other change.
output "gatehouse" {
  description = "Handshake read by gatehouse-provisioner (terraform output -json gatehouse)."
  value = {
    schema_version               = 1
    region                       = data.aws_region.current.name
    load_balancer_arn            = try(aws_lb.this.arn, null)
    load_balancer_name           = try(aws_lb.this.name, null)
    load_balancer_dns_name       = try(aws_lb.this.dns_name, null)
    target_group_arn             = try(aws_lb_target_group.this.arn, null)
    target_group_name            = try(aws_lb_target_group.this.name, null)
    target_type                  = var.target_type
    node_port                    = var.node_port
    protocol                     = "HTTP"
    health_check_path            = var.health_check_path
    health_check_port            = var.health_check_port
    deregistration_delay_seconds = var.deregistration_delay
    vpc_id                       = var.vpc_id
    cluster_name                 = var.cluster_name
  }
}

################################################################################
# IAM
################################################################################

output "iam_policy_json" {
  description = "IAM policy document (JSON) granting gatehouse-provisioner exactly the calls it makes on this target group."
  value       = try(jsonencode(local.provisioner_policy), null)
}

output "iam_policy_arn" {
  description = "ARN of the provisioner's IAM policy, when create_iam_policy is true."
  value       = try(aws_iam_policy.provisioner[0].arn, null)
}

################################################################################
# Load balancer
################################################################################

output "load_balancer_arn" {
  description = "ARN of the load balancer."
  value       = try(aws_lb.this.arn, null)
}

output "load_balancer_name" {
  description = "Name of the load balancer."
  value       = try(aws_lb.this.name, null)
}

output "load_balancer_dns_name" {
  description = "DNS name of the load balancer (point the edge hostnames at it)."
  value       = try(aws_lb.this.dns_name, null)
}

output "load_balancer_zone_id" {
  description = "Route 53 hosted zone ID of the load balancer, for alias records."
  value       = try(aws_lb.this.zone_id, null)
}

output "security_group_id" {
  description = "ID of the load balancer's security group."
  value       = try(aws_security_group.alb.id, null)
}

output "http_listener_arn" {
  description = "ARN of the HTTP listener on port 80 (forwarding, or redirecting to HTTPS when a certificate is given)."
  value       = try(aws_lb_listener.http.arn, null)
}

output "https_listener_arn" {
  description = "ARN of the HTTPS listener on port 443, when certificate_arn is set."
  value       = try(aws_lb_listener.https[0].arn, null)
}

################################################################################
# Target group
################################################################################

output "target_group_arn" {
  description = "ARN of the target group whose registrations gatehouse-provisioner manages."
  value       = try(aws_lb_target_group.this.arn, null)
}

output "target_group_name" {
  description = "Name of the target group."
  value       = try(aws_lb_target_group.this.name, null)
}
