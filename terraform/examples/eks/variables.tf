variable "region" {
  description = "AWS region of the EKS cluster."
  type        = string
  default     = "eu-west-1"
}

variable "cluster_name" {
  description = "Name of the existing EKS cluster whose nodes serve gatehouse-proxy on the NodePort."
  type        = string
}

variable "name" {
  description = "Name of the load balancer and target group (at most 32 characters)."
  type        = string
  default     = "gatehouse-edge"
}

variable "public_subnet_ids" {
  description = "Subnets for the load balancer. Null selects the cluster VPC's subnets tagged kubernetes.io/role/elb=1 (the tag EKS uses for public load balancer subnets)."
  type        = list(string)
  default     = null
}

variable "node_security_group_id" {
  description = "Security group of the worker nodes. Null uses the cluster security group, which EKS managed node groups get by default."
  type        = string
  default     = null
}

variable "node_port" {
  description = "NodePort of the gatehouse-proxy Service (spec.ports[].nodePort)."
  type        = number
  default     = 30080
}

variable "certificate_arn" {
  description = "ACM certificate for the edge hostnames (e.g. *.example.com), in the cluster's region."
  type        = string
}

variable "ingress_cidr_blocks" {
  description = "IPv4 CIDR blocks allowed to reach the load balancer."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "provisioner_role_name" {
  description = "Name of the existing IAM role gatehouse-provisioner runs as (an IRSA role trusted by the cluster's OIDC provider, or a Pod Identity role trusted by pods.eks.amazonaws.com). The module's policy is attached to it."
  type        = string
}

variable "pod_identity" {
  description = "When set, associate provisioner_role_name with this Kubernetes service account through EKS Pod Identity (leave null for IRSA, where the service account carries the eks.amazonaws.com/role-arn annotation instead)."
  type = object({
    namespace       = string
    service_account = string
  })
  default = null
}

variable "route53_zone_id" {
  description = "Hosted zone for the edge hostnames. Null creates no DNS records."
  type        = string
  default     = null
}

variable "edge_hostnames" {
  description = "Edge hostnames (e.g. api.example.com) pointed at the load balancer with alias records in route53_zone_id."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = {}
}
