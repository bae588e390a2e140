//! The WSDL 1.1 document of `/soap/v1`: document/literal wrapped, one port type, a SOAP 1.1 and a
//! SOAP 1.2 binding, and the schema of every message (including the fault detail `dtm:Error`).
//! The element names here are the ones `soap/mod.rs` reads and writes.

/// The operations, in the order the port type lists them.
const OPERATIONS: [&str; 3] = ["SubmitRecords", "SubmitBatch", "GetBatchStatus"];

const TYPES: &str = r#"
  <wsdl:types>
    <xs:schema targetNamespace="urn:dtm:soap:v1" elementFormDefault="qualified">
      <xs:element name="ApiKey" type="xs:string"/>
      <xs:element name="SubmitRecords">
        <xs:complexType><xs:sequence>
          <xs:element name="Dataset" type="xs:string"/>
          <xs:element name="RecordsJson" type="xs:string"/>
          <xs:element name="IdempotencyKey" type="xs:string" minOccurs="0"/>
          <xs:element name="SchemaVersion" type="xs:unsignedInt" minOccurs="0"/>
          <xs:element name="Source" type="xs:string" minOccurs="0"/>
        </xs:sequence></xs:complexType>
      </xs:element>
      <xs:element name="SubmitRecordsResponse">
        <xs:complexType><xs:sequence>
          <xs:element name="Accepted" type="xs:unsignedLong"/>
          <xs:element name="Id" type="xs:string" minOccurs="0" maxOccurs="unbounded"/>
          <xs:element name="CommitIndex" type="xs:unsignedLong"/>
          <xs:element name="SchemaVersion" type="xs:unsignedInt"/>
          <xs:element name="Stored" type="xs:unsignedLong"/>
          <xs:element name="Duplicates" type="xs:unsignedLong"/>
          <xs:element name="Conflicts" type="xs:unsignedLong"/>
          <xs:element name="Outcome" type="xs:string" minOccurs="0" maxOccurs="unbounded"/>
          <xs:element name="Replayed" type="xs:boolean"/>
          <xs:element name="Receipt" type="xs:string" minOccurs="0"/>
        </xs:sequence></xs:complexType>
      </xs:element>
      <xs:element name="SubmitBatch">
        <xs:complexType><xs:sequence>
          <xs:element name="Dataset" type="xs:string"/>
          <xs:element name="ContentType" type="xs:string"/>
          <xs:element name="Content" type="xs:base64Binary"/>
          <xs:element name="OnError" type="xs:string" minOccurs="0"/>
          <xs:element name="ExpectedCount" type="xs:unsignedLong" minOccurs="0"/>
          <xs:element name="Sha256" type="xs:string" minOccurs="0"/>
          <xs:element name="IdempotencyKey" type="xs:string" minOccurs="0"/>
          <xs:element name="Source" type="xs:string" minOccurs="0"/>
        </xs:sequence></xs:complexType>
      </xs:element>
      <xs:element name="SubmitBatchResponse" type="dtm:BatchAnswer"/>
      <xs:element name="GetBatchStatus">
        <xs:complexType><xs:sequence>
          <xs:element name="BatchId" type="xs:string"/>
        </xs:sequence></xs:complexType>
      </xs:element>
      <xs:element name="GetBatchStatusResponse" type="dtm:BatchAnswer"/>
      <xs:complexType name="BatchAnswer">
        <xs:sequence>
          <xs:element name="BatchId" type="xs:string"/>
          <xs:element name="Accepted" type="xs:unsignedLong" minOccurs="0"/>
          <xs:element name="Rejected" type="xs:unsignedLong" minOccurs="0"/>
          <xs:element name="CommitIndex" type="xs:unsignedLong" minOccurs="0"/>
          <xs:element name="Problem" type="dtm:Problem" minOccurs="0" maxOccurs="unbounded"/>
          <xs:element name="Receipt" type="xs:string" minOccurs="0"/>
          <xs:element name="Json" type="xs:string"/>
        </xs:sequence>
      </xs:complexType>
      <xs:complexType name="Problem">
        <xs:sequence>
          <xs:element name="Record" type="xs:long" minOccurs="0"/>
          <xs:element name="Field" type="xs:string" minOccurs="0"/>
          <xs:element name="Message" type="xs:string" minOccurs="0"/>
          <xs:element name="Json" type="xs:string"/>
        </xs:sequence>
      </xs:complexType>
      <xs:element name="Error">
        <xs:complexType><xs:sequence>
          <xs:element name="Code" type="xs:string"/>
          <xs:element name="Status" type="xs:unsignedShort"/>
          <xs:element name="Message" type="xs:string"/>
          <xs:element name="Problem" type="dtm:Problem" minOccurs="0" maxOccurs="unbounded"/>
        </xs:sequence></xs:complexType>
      </xs:element>
    </xs:schema>
  </wsdl:types>"#;

/// The WSDL with `address` as the endpoint of both ports.
pub fn document(address: &str) -> String {
    let address = super::xml::escape(address);
    let mut messages = String::from(
        r#"
  <wsdl:message name="ApiKeyHeader"><wsdl:part name="ApiKey" element="dtm:ApiKey"/></wsdl:message>
  <wsdl:message name="ErrorFault"><wsdl:part name="Error" element="dtm:Error"/></wsdl:message>"#,
    );
    let mut port_type = String::from("\n  <wsdl:portType name=\"DtmPortType\">");
    for op in OPERATIONS {
        messages.push_str(&format!(
            "\n  <wsdl:message name=\"{op}Request\"><wsdl:part name=\"parameters\" element=\"dtm:{op}\"/></wsdl:message>\
             \n  <wsdl:message name=\"{op}Response\"><wsdl:part name=\"parameters\" element=\"dtm:{op}Response\"/></wsdl:message>"
        ));
        port_type.push_str(&format!(
            "\n    <wsdl:operation name=\"{op}\"><wsdl:input message=\"dtm:{op}Request\"/>\
             <wsdl:output message=\"dtm:{op}Response\"/><wsdl:fault name=\"Error\" message=\"dtm:ErrorFault\"/></wsdl:operation>"
        ));
    }
    port_type.push_str("\n  </wsdl:portType>");
    let binding = |name: &str, prefix: &str| {
        let mut b = format!(
            "\n  <wsdl:binding name=\"{name}\" type=\"dtm:DtmPortType\">\
             \n    <{prefix}:binding style=\"document\" transport=\"http://schemas.xmlsoap.org/soap/http\"/>"
        );
        for op in OPERATIONS {
            b.push_str(&format!(
                "\n    <wsdl:operation name=\"{op}\"><{prefix}:operation soapAction=\"urn:dtm:soap:v1#{op}\" style=\"document\"/>\
                 <wsdl:input><{prefix}:body use=\"literal\"/><{prefix}:header message=\"dtm:ApiKeyHeader\" part=\"ApiKey\" use=\"literal\"/></wsdl:input>\
                 <wsdl:output><{prefix}:body use=\"literal\"/></wsdl:output>\
                 <wsdl:fault name=\"Error\"><{prefix}:fault name=\"Error\" use=\"literal\"/></wsdl:fault></wsdl:operation>"
            ));
        }
        b.push_str("\n  </wsdl:binding>");
        b
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions name="Dtm" targetNamespace="urn:dtm:soap:v1"
    xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:soap12="http://schemas.xmlsoap.org/wsdl/soap12/"
    xmlns:xs="http://www.w3.org/2001/XMLSchema"
    xmlns:dtm="urn:dtm:soap:v1">
  <wsdl:documentation>DTM record submission and batch status. Credentials: the X-API-Key or Authorization HTTP header, or the dtm:ApiKey SOAP header. Records are JSON text (one object or an array) in RecordsJson. Errors are SOAP faults whose detail is dtm:Error with the stable code of the REST API.</wsdl:documentation>{TYPES}{messages}{port_type}{b11}{b12}
  <wsdl:service name="DtmService">
    <wsdl:port name="DtmSoap11" binding="dtm:DtmSoap11Binding"><soap:address location="{address}"/></wsdl:port>
    <wsdl:port name="DtmSoap12" binding="dtm:DtmSoap12Binding"><soap12:address location="{address}"/></wsdl:port>
  </wsdl:service>
</wsdl:definitions>
"#,
        b11 = binding("DtmSoap11Binding", "soap"),
        b12 = binding("DtmSoap12Binding", "soap12"),
    )
}
