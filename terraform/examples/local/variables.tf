variable "aws_endpoint" {
  description = "URL of the AWS emulator every AWS service endpoint points at (localstack/up prints it as AWS_ENDPOINT_URL)."
  type        = string
  default     = "http://127.0.0.1:4566"
}

variable "name" {
  description = "Name of the load balancer and target group (at most 32 characters); tests pass a unique one."
  type        = string
  default     = "gatehouse-local"
}

variable "node_port" {
  description = "Port the stand-in nodes (loopback addresses registered as ip targets) serve gatehouse-proxy on."
  type        = number
  default     = 30080
}

variable "cluster_name" {
  description = "The cluster name the target group is tagged with, by which `gatehouse-provisioner --cluster` finds it; tests pass a unique one."
  type        = string
  default     = "gatehouse-local"
}
