//! The permission each gRPC method needs, by path. A method missing here is refused while
//! access control is enforced (fail closed), and a test walks the descriptor set so that a new
//! RPC fails until it is mapped.

use super::policy::Permission;

/// What a method asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Required {
    /// Nothing: health and reflection, for the mesh and for grpcurl.
    Nothing,
    /// A permission on the request's account, checked once the body is read.
    OnAccount(Permission),
    /// `ip_prefixes.read` on the request's account, or this global permission without one.
    AccountOrGlobal(Permission),
    /// A global permission, checked before the handler runs.
    Global(Permission),
}

/// The requirement of the method at `path` (`/package.Service/Method`).
pub fn required(path: &str) -> Option<Required> {
    use Permission::*;
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    Some(match (service, method) {
        ("grpc.health.v1.Health", _)
        | ("grpc.reflection.v1.ServerReflection", _)
        | ("grpc.reflection.v1alpha.ServerReflection", _) => Required::Nothing,
        ("addressing.v1.Prefixes", "CreatePrefix" | "UpdatePrefix" | "DeletePrefix")
        | ("addressing.v1.ServiceBindings", "CreateServiceBinding" | "DeleteServiceBinding") => {
            Required::OnAccount(PrefixesEdit)
        }
        ("addressing.v1.Prefixes", "GetPrefix" | "ListPrefixes")
        | ("addressing.v1.ServiceBindings", "GetServiceBinding" | "ListServiceBindings")
        | ("addressing.v1.Services", "ListServices") => Required::OnAccount(PrefixesRead),
        ("addressing.v1.ServiceBindings", "WatchServiceBindings") => Required::AccountOrGlobal(BindingsWatchAll),
        ("addressing.v1.Routing", "ExportRoutes" | "WatchRoutes") => Required::AccountOrGlobal(RoutingLookup),
        ("addressing.v1.Routing", "PreviewChange") => Required::OnAccount(PrefixesRead),
        ("addressing.v1.Routing", "LookupAddress" | "LookupAddresses") => Required::Global(RoutingLookup),
        ("addressing.v1.Rollout", "CompleteProvisioning") => Required::Global(RolloutComplete),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every RPC this server serves has a requirement.
    #[test]
    fn every_method_of_the_descriptor_set_is_mapped() {
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut n_methods = 0;
        for file in set.file.iter().filter(|file| file.package() == "addressing.v1") {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/addressing.v1.{}/{}", service.name(), method.name());
                    assert!(required(&path).is_some(), "{path} has no permission mapped");
                    n_methods += 1;
                }
            }
        }
        assert!(n_methods >= 10, "{n_methods} methods");
        assert_eq!(required("/grpc.health.v1.Health/Check"), Some(Required::Nothing));
        assert_eq!(required("/addressing.v1.Prefixes/Nope"), None);
    }
}
