# The edge-ingress module applied against a local AWS emulator (see localstack/up): a VPC with two
# public subnets and the module with `ip` targets, so loopback addresses can stand in for nodes.
#
#   eval "$(localstack/up)"
#   terraform/tf -chdir=terraform/examples/local init
#   terraform/tf -chdir=terraform/examples/local apply -auto-approve

provider "aws" {
  # MiniStack's ALB data plane only finds load balancers in its default region, us-east-1.
  region     = "us-east-1"
  access_key = "test"
  secret_key = "test"

  # An emulator has no real account, credentials or instance metadata.
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_use_path_style           = true

  endpoints {
    ec2   = var.aws_endpoint
    elbv2 = var.aws_endpoint
    iam   = var.aws_endpoint
    sts   = var.aws_endpoint
    acm   = var.aws_endpoint
    s3    = var.aws_endpoint
  }

  default_tags {
    tags = {
      Project     = "gatehouse"
      Environment = "local"
    }
  }
}

locals {
  # Fixed, like the region: the emulator has no capacity to choose by.
  azs = ["us-east-1a", "us-east-1b"]
}

resource "aws_vpc" "this" {
  #checkov:skip=CKV2_AWS_11:Emulator-only example VPC: no flow logs.
  #checkov:skip=CKV2_AWS_12:Emulator-only example VPC: its default security group is unused.
  cidr_block         = "10.0.0.0/16"
  enable_dns_support = true

  tags = { Name = var.name }
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id

  tags = { Name = var.name }
}

resource "aws_subnet" "public" {
  count = 2

  vpc_id            = aws_vpc.this.id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(aws_vpc.this.cidr_block, 8, count.index)

  tags = { Name = "${var.name}-public-${local.azs[count.index]}" }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id

  tags = { Name = "${var.name}-public" }
}

resource "aws_route" "internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this.id
}

resource "aws_route_table_association" "public" {
  count = 2

  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

module "edge_ingress" {
  source = "../../modules/edge-ingress"

  name       = var.name
  vpc_id     = aws_vpc.this.id
  subnet_ids = aws_subnet.public[*].id
  internal   = false

  target_type = "ip"
  node_port   = var.node_port
  # The handshake as tags: `gatehouse-provisioner --cluster <cluster_name>` finds the group.
  cluster_name = var.cluster_name

  # An internet-facing ALB needs its subnets routed to an internet gateway.
  depends_on = [aws_route.internet, aws_route_table_association.public]
}
