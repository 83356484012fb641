"""Operations tooling: bootstrap a new AWS account, build deployment packages."""
