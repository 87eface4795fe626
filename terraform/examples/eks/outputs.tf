output "gatehouse" {
  description = "Handshake read by gatehouse-provisioner (terraform output -json gatehouse)."
  value       = module.edge_ingress.gatehouse
}

output "iam_policy_arn" {
  description = "ARN of the provisioner's IAM policy (attached to provisioner_role_name)."
  value       = module.edge_ingress.iam_policy_arn
}

output "load_balancer_dns_name" {
  description = "DNS name of the load balancer; the edge hostnames point at it."
  value       = module.edge_ingress.load_balancer_dns_name
}
