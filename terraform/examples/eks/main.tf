# gatehouse in front of an existing EKS cluster: an internet-facing ALB with HTTPS, a target group
# of the nodes (instance targets) on the gatehouse-proxy NodePort, the node security group rule,
# and the IAM policy gatehouse-provisioner runs with, attached to its role.
#
# Not applied by the project's tests (no EKS here); `terraform validate` checks it.

provider "aws" {
  region = var.region
}

data "aws_eks_cluster" "this" {
  name = var.cluster_name
}

data "aws_subnets" "public" {
  count = var.public_subnet_ids == null ? 1 : 0

  filter {
    name   = "vpc-id"
    values = [data.aws_eks_cluster.this.vpc_config[0].vpc_id]
  }

  tags = {
    "kubernetes.io/role/elb" = "1"
  }
}

data "aws_iam_role" "provisioner" {
  name = var.provisioner_role_name
}

locals {
  vpc_id                 = data.aws_eks_cluster.this.vpc_config[0].vpc_id
  subnet_ids             = var.public_subnet_ids != null ? var.public_subnet_ids : data.aws_subnets.public[0].ids
  node_security_group_id = coalesce(var.node_security_group_id, data.aws_eks_cluster.this.vpc_config[0].cluster_security_group_id)
}

module "edge_ingress" {
  source = "../../modules/edge-ingress"

  name       = var.name
  vpc_id     = local.vpc_id
  subnet_ids = local.subnet_ids

  ingress_cidr_blocks = var.ingress_cidr_blocks
  certificate_arn     = var.certificate_arn

  target_type            = "instance"
  node_port              = var.node_port
  node_security_group_id = local.node_security_group_id
  # The handshake as tags: the chart's clusterName finds the target group.
  cluster_name = data.aws_eks_cluster.this.name

  create_iam_policy = true

  enable_deletion_protection = true

  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "provisioner" {
  role       = data.aws_iam_role.provisioner.name
  policy_arn = module.edge_ingress.iam_policy_arn
}

resource "aws_eks_pod_identity_association" "provisioner" {
  count = var.pod_identity == null ? 0 : 1

  cluster_name    = data.aws_eks_cluster.this.name
  namespace       = var.pod_identity.namespace
  service_account = var.pod_identity.service_account
  role_arn        = data.aws_iam_role.provisioner.arn

  tags = var.tags
}

resource "aws_route53_record" "edge" {
  for_each = var.route53_zone_id == null ? toset([]) : toset(var.edge_hostnames)

  zone_id = var.route53_zone_id
  name    = each.value
  type    = "A"

  alias {
    name                   = module.edge_ingress.load_balancer_dns_name
    zone_id                = module.edge_ingress.load_balancer_zone_id
    evaluate_target_health = true
  }
}
