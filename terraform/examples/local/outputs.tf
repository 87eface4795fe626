output "gatehouse" {
  description = "Handshake read by gatehouse-provisioner (terraform output -json gatehouse)."
  value       = module.edge_ingress.gatehouse
}

output "iam_policy_json" {
  description = "IAM policy document granting gatehouse-provisioner exactly what it needs on this target group."
  value       = module.edge_ingress.iam_policy_json
}

output "load_balancer_dns_name" {
  description = "DNS name of the load balancer (in the emulator, requests go to http://127.0.0.1:4566/_alb/<name>/...)."
  value       = module.edge_ingress.load_balancer_dns_name
}
